-- record_points_request (0004) recorded one trigger a statement. Gateways have
-- called record_points_requests (0005) since the release after it, and 0005
-- kept the old function only for gateways of that previous release during a
-- rolling deploy. Every gateway of this release and the one before it uses
-- the batched function, so the single one goes.

DROP FUNCTION IF EXISTS record_points_request(
    text, text, uuid, text, text, text, text, integer, text, text, bigint,
    bigint, bigint, text, text, bytea, text
);
