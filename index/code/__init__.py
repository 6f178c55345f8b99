"""Code collections: parsing source trees into definitions and keeping a collection in step."""
