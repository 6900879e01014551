-- The demo shop (SPEC §5): customers, orders 1001-1010, their invoices, an FAQ. Not part of the
-- migrations: `worker seed`, or a worker started with SEED_DEMO_DATA=true, loads it. Idempotent:
-- tables are created when missing and rows inserted when missing, so what demo conversations
-- changed (cancelled orders, refunds) stays as it is.

CREATE TABLE IF NOT EXISTS demo_customers (
    id     INT PRIMARY KEY,
    name   TEXT NOT NULL,
    email  TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS demo_orders (
    id            INT PRIMARY KEY,
    customer_id   INT NOT NULL REFERENCES demo_customers (id),
    status        TEXT NOT NULL,
    items         TEXT NOT NULL,
    total_usd     NUMERIC(10, 2) NOT NULL,
    placed_on     DATE NOT NULL,
    eta           DATE,
    cancel_reason TEXT
);

CREATE TABLE IF NOT EXISTS demo_invoices (
    id             TEXT PRIMARY KEY,
    order_id       INT NOT NULL UNIQUE REFERENCES demo_orders (id),
    amount_usd     NUMERIC(10, 2) NOT NULL,
    status         TEXT NOT NULL,
    issued_on      DATE NOT NULL,
    refunded_usd   NUMERIC(10, 2) NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS demo_refunds (
    id          BIGSERIAL PRIMARY KEY,
    order_id    INT NOT NULL REFERENCES demo_orders (id),
    amount_usd  NUMERIC(10, 2) NOT NULL,
    reason      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS demo_faq (
    id        INT PRIMARY KEY,
    question  TEXT NOT NULL,
    answer    TEXT NOT NULL,
    keywords  TEXT NOT NULL
);

INSERT INTO demo_customers (id, name, email) VALUES
    (1, 'Ada Lovelace', 'ada@example.com'),
    (2, 'Alan Turing', 'alan@example.com'),
    (3, 'Grace Hopper', 'grace@example.com'),
    (4, 'Edsger Dijkstra', 'edsger@example.com')
ON CONFLICT (id) DO NOTHING;

INSERT INTO demo_orders (id, customer_id, status, items, total_usd, placed_on, eta, cancel_reason) VALUES
    (1001, 1, 'delivered',  '1 x mechanical keyboard',            129.00, DATE '2026-10-02', DATE '2026-10-06', NULL),
    (1002, 1, 'shipped',    '2 x USB-C cable',                     24.50, DATE '2026-11-18', DATE '2026-11-26', NULL),
    (1003, 2, 'processing', '1 x 27-inch monitor',                 349.99, DATE '2026-11-21', DATE '2026-11-30', NULL),
    (1004, 2, 'shipped',    '1 x noise-cancelling headphones',    199.00, DATE '2026-11-15', DATE '2026-11-25', NULL),
    (1005, 3, 'delivered',  '3 x notebook, 1 x fountain pen',      42.75, DATE '2026-09-12', DATE '2026-09-16', NULL),
    (1006, 3, 'processing', '1 x standing desk',                   499.00, DATE '2026-11-22', DATE '2026-12-04', NULL),
    (1007, 4, 'cancelled',  '1 x webcam',                           79.90, DATE '2026-11-01', NULL, 'customer request'),
    (1008, 4, 'shipped',    '1 x laptop stand',                     59.00, DATE '2026-11-19', DATE '2026-11-27', NULL),
    (1009, 1, 'processing', '1 x ergonomic mouse',                  89.00, DATE '2026-11-23', DATE '2026-11-29', NULL),
    (1010, 2, 'delivered',  '1 x external SSD 1 TB',               109.00, DATE '2026-10-20', DATE '2026-10-24', NULL)
ON CONFLICT (id) DO NOTHING;

INSERT INTO demo_invoices (id, order_id, amount_usd, status, issued_on, refunded_usd) VALUES
    ('INV-1001', 1001, 129.00, 'paid',     DATE '2026-10-02', 0),
    ('INV-1002', 1002,  24.50, 'paid',     DATE '2026-11-18', 0),
    ('INV-1003', 1003, 349.99, 'paid',     DATE '2026-11-21', 0),
    ('INV-1004', 1004, 199.00, 'paid',     DATE '2026-11-15', 0),
    ('INV-1005', 1005,  42.75, 'paid',     DATE '2026-09-12', 0),
    ('INV-1006', 1006, 499.00, 'paid',     DATE '2026-11-22', 0),
    ('INV-1007', 1007,  79.90, 'refunded', DATE '2026-11-01', 79.90),
    ('INV-1008', 1008,  59.00, 'paid',     DATE '2026-11-19', 0),
    ('INV-1009', 1009,  89.00, 'paid',     DATE '2026-11-23', 0),
    ('INV-1010', 1010, 109.00, 'paid',     DATE '2026-10-20', 0)
ON CONFLICT (id) DO NOTHING;

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
        'payment pay card paypal transfer methods')
ON CONFLICT (id) DO NOTHING;
