-- A cap bounds everything its rule has moved, whenever the cap is set. Until
-- now the gateway counted a rule's usage (and a member's) only while the rule
-- had a cap, so a cap set or raised later started from zero: a rule that had
-- moved 1,000 points uncapped and was then capped at 1,200 accepted 1,000
-- more. From this release every accepted trigger reserves its amount in
-- cap_usage and member_cap_usage, capped or not; a cap only decides whether
-- the reservation fits. Runs with search_path = trigger.
--
-- A counter may saturate at 2^62, far above any cap (a cap is at most
-- 2^53 - 1): adding one request's amount (also at most 2^53 - 1) to it then
-- never overflows bigint.

-- What the requests still retained had moved uncapped: they reserve it now, so
-- a rejection or reversal frees it like any other reservation. Requests purged
-- before this release are not counted; a cap below what the ledger applied is
-- refused by the rules service, which counts every applied result.
WITH uncounted AS (
    UPDATE requests SET cap_reserved = amount
    WHERE cap_reserved = 0 AND status <> 'failed' AND reversed_at IS NULL
    RETURNING rule_id, amount
), by_rule AS (
    SELECT rule_id, least(sum(amount), 4611686018427387904)::bigint AS used
    FROM uncounted GROUP BY rule_id
)
INSERT INTO cap_usage AS u (rule_id, used)
SELECT rule_id, used FROM by_rule
ON CONFLICT (rule_id) DO UPDATE SET used = least(u.used + EXCLUDED.used, 4611686018427387904);

WITH uncounted AS (
    UPDATE requests SET member_cap_reserved = amount
    WHERE member_cap_reserved = 0 AND status <> 'failed' AND reversed_at IS NULL
    RETURNING rule_id, user_id, amount
), by_member AS (
    SELECT rule_id, user_id, least(sum(amount), 4611686018427387904)::bigint AS used
    FROM uncounted GROUP BY rule_id, user_id
)
INSERT INTO member_cap_usage AS u (rule_id, user_id, used)
SELECT rule_id, user_id, used FROM by_member
ON CONFLICT (rule_id, user_id) DO UPDATE
SET used = least(u.used + EXCLUDED.used, 4611686018427387904);

-- No request may stay pending without bound (issue 16). A request still
-- pending some minutes after it was accepted is published again (its event
-- lost, or its result): the ledger applies it if it never saw it and
-- otherwise publishes its result again. For that the request keeps what its
-- event carried and the row did not: the callback URL and correlation id.
-- redriven_at and redrives say when and how often it was published again.
ALTER TABLE requests
    ADD COLUMN callback_url   text,
    ADD COLUMN correlation_id text,
    ADD COLUMN redriven_at    timestamptz,
    ADD COLUMN redrives       integer NOT NULL DEFAULT 0;
CREATE INDEX requests_pending ON requests (created_at) WHERE status = 'pending';

-- As in 0005, with two changes: every trigger reserves its amount on its rule
-- and its member whether or not a cap is set; and the request keeps its
-- callback URL and correlation id. Those are new arguments, so this is an
-- overload: 0005's function stays for gateways of the previous release during
-- a rolling deploy (they do not count uncapped usage).
--
-- A reservation under a cap is checked and taken trigger by trigger, as
-- before. What triggers without a cap reserve cannot be refused, so it is
-- added up and written once per rule and once per member for the whole batch,
-- after the loop, each table in key order: one upsert per trigger cost the
-- gateway a tenth of its throughput (make bench-gateway, docs/performance.md).
CREATE FUNCTION record_points_requests(
    p_client_ids text[], p_request_ids text[], p_transaction_ids uuid[], p_body_hashes text[],
    p_org_ids text[], p_environments text[], p_rule_ids text[], p_rule_versions integer[],
    p_user_ids text[], p_types text[], p_amounts bigint[],
    p_cap_maxes bigint[], p_cap_per_members bigint[],
    p_outbox_topics text[], p_outbox_keys text[], p_outbox_payloads bytea[],
    p_outbox_headers text[], p_callback_urls text[], p_correlation_ids text[]
) RETURNS TABLE (request_position integer, outcome text, transaction_id uuid, body_hash text)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    recorded integer[] := '{}';
    saturated CONSTANT bigint := 4611686018427387904;
BEGIN
    FOR i IN
        SELECT n FROM generate_subscripts(p_client_ids, 1) AS n
        ORDER BY p_rule_ids[n], p_user_ids[n], n
    LOOP
        INSERT INTO requests (
            client_id, request_id, transaction_id, body_hash, org_id, environment,
            rule_id, rule_version, user_id, type, amount, cap_reserved, member_cap_reserved,
            callback_url, correlation_id
        ) VALUES (
            p_client_ids[i], p_request_ids[i], p_transaction_ids[i], p_body_hashes[i],
            p_org_ids[i], p_environments[i], p_rule_ids[i], p_rule_versions[i],
            p_user_ids[i], p_types[i], p_amounts[i], p_amounts[i], p_amounts[i],
            p_callback_urls[i], p_correlation_ids[i]
        ) ON CONFLICT ON CONSTRAINT requests_pkey DO NOTHING;
        IF NOT FOUND THEN
            RETURN QUERY
                SELECT i, 'replayed', r.transaction_id, r.body_hash FROM requests AS r
                WHERE r.client_id = p_client_ids[i] AND r.request_id = p_request_ids[i];
            CONTINUE;
        END IF;

        IF p_cap_maxes[i] IS NOT NULL THEN
            -- Writes nothing when the amount would overshoot the cap.
            INSERT INTO cap_usage AS u (rule_id, used)
            SELECT p_rule_ids[i], p_amounts[i] WHERE p_amounts[i] <= p_cap_maxes[i]
            ON CONFLICT (rule_id) DO UPDATE SET used = u.used + EXCLUDED.used
            WHERE u.used + EXCLUDED.used <= p_cap_maxes[i];
            IF NOT FOUND THEN
                DELETE FROM requests
                WHERE client_id = p_client_ids[i] AND request_id = p_request_ids[i];
                RETURN QUERY SELECT i, 'CAP_EXCEEDED', NULL::uuid, NULL::text;
                CONTINUE;
            END IF;
        END IF;
        IF p_cap_per_members[i] IS NOT NULL THEN
            INSERT INTO member_cap_usage AS u (rule_id, user_id, used)
            SELECT p_rule_ids[i], p_user_ids[i], p_amounts[i]
            WHERE p_amounts[i] <= p_cap_per_members[i]
            ON CONFLICT (rule_id, user_id) DO UPDATE SET used = u.used + EXCLUDED.used
            WHERE u.used + EXCLUDED.used <= p_cap_per_members[i];
        END IF;
        IF p_cap_per_members[i] IS NOT NULL AND NOT FOUND THEN
            IF p_cap_maxes[i] IS NOT NULL THEN
                UPDATE cap_usage SET used = used - p_amounts[i] WHERE rule_id = p_rule_ids[i];
            END IF;
            DELETE FROM requests
            WHERE client_id = p_client_ids[i] AND request_id = p_request_ids[i];
            RETURN QUERY SELECT i, 'MEMBER_CAP_EXCEEDED', NULL::uuid, NULL::text;
            CONTINUE;
        END IF;

        recorded := recorded || i;
        RETURN QUERY SELECT i, 'recorded', p_transaction_ids[i], p_body_hashes[i];
    END LOOP;

    -- What the triggers without a cap reserve, for the batch at once.
    INSERT INTO cap_usage AS u (rule_id, used)
    SELECT p_rule_ids[n], least(sum(p_amounts[n]), saturated)
    FROM unnest(recorded) AS n WHERE p_cap_maxes[n] IS NULL
    GROUP BY p_rule_ids[n] ORDER BY p_rule_ids[n]
    ON CONFLICT (rule_id) DO UPDATE SET used = least(u.used + EXCLUDED.used, saturated);
    INSERT INTO member_cap_usage AS u (rule_id, user_id, used)
    SELECT p_rule_ids[n], p_user_ids[n], least(sum(p_amounts[n]), saturated)
    FROM unnest(recorded) AS n WHERE p_cap_per_members[n] IS NULL
    GROUP BY p_rule_ids[n], p_user_ids[n] ORDER BY p_rule_ids[n], p_user_ids[n]
    ON CONFLICT (rule_id, user_id) DO UPDATE SET used = least(u.used + EXCLUDED.used, saturated);

    -- One insert for the batch, in acceptance order (the relay publishes in id order).
    INSERT INTO outbox (topic, key, payload, headers)
    SELECT p_outbox_topics[n], p_outbox_keys[n], p_outbox_payloads[n], p_outbox_headers[n]::jsonb
    FROM unnest(recorded) AS n
    ORDER BY n;
END;
$$;
