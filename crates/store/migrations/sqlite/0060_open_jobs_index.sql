-- A router's unfinished jobs in order, alone: the claim's "no earlier unfinished job of
-- the router" check and a router's batch read only these, so they stay fast however long
-- the history of finished jobs grows (the index on all jobs, `jobs_router_seq`, would
-- have them step over every finished one).
CREATE INDEX jobs_open_router_seq ON jobs(router_id, seq) WHERE state IN ('pending', 'running');
