-- The items of an array at the given positions (1-based), in the order given.
-- Lets one statement hand record_points_requests (0005) only the triggers of
-- a batch that may be recorded. Runs with search_path = trigger.
CREATE FUNCTION pick(items anyarray, positions integer[]) RETURNS anyarray
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY(
        SELECT items[position]
        FROM unnest(positions) WITH ORDINALITY AS picked (position, n)
        ORDER BY n
    )
$$;
