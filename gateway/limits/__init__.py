"""Rate and concurrency limits behind one protocol: `memory` for one process, `redis` for many."""
