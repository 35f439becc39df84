-- jit = off as for append_events (0010): the default row estimates of generate_series and
-- jsonb_array_elements put store_events' tag insert above jit_above_cost, and compiling it costs
-- milliseconds per call where PostgreSQL has JIT (Debian's PostgreSQL 15 does, by default).
--
-- Not done here: plan_cache_mode = force_generic_plan. It made one 10,000-event write linear
-- (the subscripts p_data[w.off + k] stay O(1) on PL/pgSQL's expanded arrays instead of walking
-- flattened constants), but concurrent groups mixing big and small writes became about ten
-- times slower (tests/test_failures.py's shutdown test: 6.6 s to 45-90 s). Reading the arrays
-- without subscripts belongs to the write-path work of issue #13.
ALTER FUNCTION store_events(integer[], integer[], bigint[], integer[], text[], uuid[], text[], text[], text[], jsonb[])
    SET jit = off;
