-- Store::interrupt_raised_at: when approval $1 was raised.
SELECT created_at FROM interrupts WHERE id = $1
