-- The delta methods a release's publisher was told never to send (`deltaroot publish
-- --skip-method`), names separated by spaces; the server's background delta builder does
-- not use them for pairs ending at the release. Append-only: never edit a migration once
-- released.

ALTER TABLE releases ADD COLUMN skip_methods TEXT NOT NULL DEFAULT '';
