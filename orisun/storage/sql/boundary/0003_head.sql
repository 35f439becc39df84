-- The boundary's head: the last position assigned. Exactly one row. The writer locks it for the
-- length of its transaction, which serialises position assignment in commit order across every
-- Orisun node that shares the database (docs/contract.md §2).
CREATE TABLE head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    position  bigint NOT NULL DEFAULT 0 CHECK (position >= 0)
);

INSERT INTO head (singleton, position) VALUES (true, 0);
