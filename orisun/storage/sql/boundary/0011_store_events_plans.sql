-- store_events (0006) reads its per-event arrays by subscript: p_data[w.off + k]. PL/pgSQL keeps
-- array arguments in expanded form, where a subscript is O(1), but by default it plans a
-- statement with the current argument values as constants: each array becomes one flat constant,
-- and a subscript of a flat array of variable-width values walks it from the start. A write of
-- n events then cost O(n^2): 10,000 events of 1 kB took ~1.3 s, most of it walking arrays. A
-- generic plan keeps the arguments as parameters (the plans' shape does not depend on their
-- values), so each subscript is O(1) again.
-- jit = off as for append_events (0010): the default row estimates of generate_series and
-- jsonb_array_elements put the tag insert above jit_above_cost, and compiling it costs
-- milliseconds per call where PostgreSQL has JIT.
ALTER FUNCTION store_events(integer[], integer[], bigint[], integer[], text[], uuid[], text[], text[], text[], jsonb[])
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION store_events(integer[], integer[], bigint[], integer[], text[], uuid[], text[], text[], text[], jsonb[])
    SET jit = off;
