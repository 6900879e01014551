// Deletes the JetStream streams <NATS_PREFIX>_IN and <NATS_PREFIX>_OUT of a finished run.
import { connect } from 'nats';

const prefix = process.env.NATS_PREFIX;
if (!prefix) process.exit(0);
const nc = await connect({ servers: process.env.NATS_URL ?? '127.0.0.1:4222' });
const jsm = await nc.jetstreamManager();
for (const suffix of ['_IN', '_OUT']) {
  await jsm.streams.delete(`${prefix}${suffix}`).catch(() => {});
}
await nc.close();
