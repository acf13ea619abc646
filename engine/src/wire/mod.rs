//! Peer wire protocol (BEP 3, 6, 9, 10), sans I/O: bytes in, typed messages out.
