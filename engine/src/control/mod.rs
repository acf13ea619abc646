//! The control plane: everything that runs beside the shards, never on them.
//!
//! Owns: starting and stopping the shards (`seeder`), torrent health and rechecks (`health`),
//! the admin endpoint (`admin`), the shards' .torrent reads (`extras`). Must never: run on a shard thread, or reach a shard other
//! than through the `plane` messages over bounded channels.

pub mod admin;
pub mod extras;
pub mod health;
pub mod seeder;
