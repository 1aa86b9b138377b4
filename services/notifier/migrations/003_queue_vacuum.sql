-- items and deliveries are a queue: every item is updated once when it is gathered into
-- a delivery, every delivery when it is attempted. Until a vacuum clears the old row
-- versions, each assembly pass walks their index entries: after a burst of a million
-- matches, a pass took 320 ms instead of 14. Vacuum them after a fixed number of dead
-- rows (not a fifth of the table, which grows without end), without throttling.
ALTER TABLE items SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 20000,
                       autovacuum_vacuum_insert_scale_factor = 0,
                       autovacuum_vacuum_insert_threshold = 50000,
                       autovacuum_analyze_scale_factor = 0.02,
                       autovacuum_vacuum_cost_delay = 0);
ALTER TABLE deliveries SET (autovacuum_vacuum_scale_factor = 0,
                            autovacuum_vacuum_threshold = 5000,
                            autovacuum_vacuum_cost_delay = 0);
