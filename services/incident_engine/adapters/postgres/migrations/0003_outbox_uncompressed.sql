-- The engine writes outbox rows lz4-compressed (adapters/outbox_codec.py): Postgres trying pglz on
-- them again only burns CPU on every batch. Stored out of line as they are.
ALTER TABLE outbox ALTER COLUMN messages SET STORAGE EXTERNAL;
