-- The agent graph: approvals (interrupts) with their checkpoints, the ledger of approved tool
-- runs, what each turn did, and the demo shop's data.

-- An approval a turn is waiting for. Written before its `interrupt` frame is published; the
-- thread points at it (threads.pending_interrupt) once the turn that raised it commits.
CREATE TABLE interrupts (
    id             UUID PRIMARY KEY,
    thread_id      TEXT NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    -- The paused turn: its answer continues the same turn id.
    turn_id        UUID NOT NULL,
    -- Stream sequence of the client message whose turn raised it.
    in_seq         BIGINT NOT NULL,
    agent          TEXT NOT NULL,
    action         TEXT NOT NULL,
    params         JSONB NOT NULL,
    -- Everything needed to continue the turn on any worker (the agent's conversation so far,
    -- the calls still to run, the agents still to run, usage so far).
    checkpoint     JSONB NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at     TIMESTAMPTZ NOT NULL,
    -- pending | approved | rejected | expired | superseded
    status         TEXT NOT NULL DEFAULT 'pending',
    decided_at     TIMESTAMPTZ,
    -- Stream sequence of the message that decided it.
    decided_in_seq BIGINT
);

CREATE INDEX interrupts_thread_idx ON interrupts (thread_id, created_at);
CREATE INDEX interrupts_created_at_idx ON interrupts (created_at);

ALTER TABLE threads ADD COLUMN pending_interrupt UUID;

-- Approved tool runs, keyed by the interrupt id: an approved action runs at most once, whatever
-- crashes or redeliveries happen. Built-in tools write their effect in the same transaction.
CREATE TABLE tool_executions (
    interrupt_id  UUID PRIMARY KEY REFERENCES interrupts (id) ON DELETE CASCADE,
    thread_id     TEXT NOT NULL,
    tool          TEXT NOT NULL,
    args          JSONB NOT NULL,
    ok            BOOLEAN NOT NULL,
    result        JSONB NOT NULL,
    executed_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- What a turn did: the agents that ran, in order, and its events (tool calls and results,
-- interrupts and decisions, clarifications) for the replay timeline.
ALTER TABLE turns ADD COLUMN agents TEXT[] NOT NULL DEFAULT '{}';
ALTER TABLE turns ADD COLUMN events JSONB NOT NULL DEFAULT '[]';
-- turns.outcome (from the previous migration) is now one of: completed | interrupted |
-- clarification | session_expired | dead_lettered.

-- The demo shop (SPEC §5): customers, orders 1001-1010, invoices, FAQ.
CREATE TABLE demo_customers (
    id     INT PRIMARY KEY,
    name   TEXT NOT NULL,
    email  TEXT NOT NULL
);

CREATE TABLE demo_orders (
    id            INT PRIMARY KEY,
    customer_id   INT NOT NULL REFERENCES demo_customers (id),
    status        TEXT NOT NULL,
    items         TEXT NOT NULL,
    total_usd     NUMERIC(10, 2) NOT NULL,
    placed_on     DATE NOT NULL,
    eta           DATE,
    cancel_reason TEXT
);

CREATE TABLE demo_invoices (
    id             TEXT PRIMARY KEY,
    order_id       INT NOT NULL UNIQUE REFERENCES demo_orders (id),
    amount_usd     NUMERIC(10, 2) NOT NULL,
    status         TEXT NOT NULL,
    issued_on      DATE NOT NULL,
    refunded_usd   NUMERIC(10, 2) NOT NULL DEFAULT 0
);

CREATE TABLE demo_refunds (
    id          BIGSERIAL PRIMARY KEY,
    order_id    INT NOT NULL REFERENCES demo_orders (id),
    amount_usd  NUMERIC(10, 2) NOT NULL,
    reason      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE demo_faq (
    id        INT PRIMARY KEY,
    question  TEXT NOT NULL,
    answer    TEXT NOT NULL,
    keywords  TEXT NOT NULL
);

INSERT INTO demo_customers (id, name, email) VALUES
    (1, 'Ada Lovelace', 'ada@example.com'),
    (2, 'Alan Turing', 'alan@example.com'),
    (3, 'Grace Hopper', 'grace@example.com'),
    (4, 'Edsger Dijkstra', 'edsger@example.com');

INSERT INTO demo_orders (id, customer_id, status, items, total_usd, placed_on, eta) VALUES
    (1001, 1, 'delivered',  '1 x mechanical keyboard',            129.00, DATE '2026-10-02', DATE '2026-10-06'),
    (1002, 1, 'shipped',    '2 x USB-C cable',                     24.50, DATE '2026-11-18', DATE '2026-11-26'),
    (1003, 2, 'processing', '1 x 27-inch monitor',                 349.99, DATE '2026-11-21', DATE '2026-11-30'),
    (1004, 2, 'shipped',    '1 x noise-cancelling headphones',    199.00, DATE '2026-11-15', DATE '2026-11-25'),
    (1005, 3, 'delivered',  '3 x notebook, 1 x fountain pen',      42.75, DATE '2026-09-12', DATE '2026-09-16'),
    (1006, 3, 'processing', '1 x standing desk',                   499.00, DATE '2026-11-22', DATE '2026-12-04'),
    (1007, 4, 'cancelled',  '1 x webcam',                           79.90, DATE '2026-11-01', NULL),
    (1008, 4, 'shipped',    '1 x laptop stand',                     59.00, DATE '2026-11-19', DATE '2026-11-27'),
    (1009, 1, 'processing', '1 x ergonomic mouse',                  89.00, DATE '2026-11-23', DATE '2026-11-29'),
    (1010, 2, 'delivered',  '1 x external SSD 1 TB',               109.00, DATE '2026-10-20', DATE '2026-10-24');

UPDATE demo_orders SET cancel_reason = 'customer request' WHERE id = 1007;

INSERT INTO demo_invoices (id, order_id, amount_usd, status, issued_on, refunded_usd)
SELECT 'INV-' || id, id, total_usd,
       CASE WHEN status = 'cancelled' THEN 'refunded' ELSE 'paid' END,
       placed_on,
       CASE WHEN status = 'cancelled' THEN total_usd ELSE 0 END
  FROM demo_orders;

INSERT INTO demo_faq (id, question, answer, keywords) VALUES
    (1, 'What is your return policy?',
        'You can return any item within 30 days of delivery for a full refund; it must be unused and in its original packaging.',
        'return returns policy exchange send back'),
    (2, 'How long does shipping take?',
        'Standard shipping takes 3 to 5 business days; express shipping takes 1 to 2 business days.',
        'shipping delivery time how long express standard'),
    (3, 'When is support available?',
        'Our support team is available Monday to Friday, 9:00 to 18:00 CET; this assistant answers around the clock.',
        'hours open support available contact phone'),
    (4, 'How do I reset my password?',
        'Use "Forgot password" on the sign-in page; we email you a reset link that is valid for one hour.',
        'password reset login sign account'),
    (5, 'What does the warranty cover?',
        'Every product has a two-year warranty against manufacturing defects; keep your invoice as proof of purchase.',
        'warranty guarantee defect broken repair'),
    (6, 'Which payment methods do you accept?',
        'We accept credit and debit cards, PayPal and bank transfer.',
        'payment pay card paypal transfer methods');
