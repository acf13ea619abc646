//! The HTTP/1.1 front-end (web seeds, BEP 19, and plain range downloads), pure parts.
//!
//! Owns: the `[http]` config (`config`), the request-head parser (`request`), URL to file
//! lookup (`index`) and the answers (`response`). The shard's `http_conn` module does the
//! I/O: it feeds received bytes to `request::parse`, sends the head `response::answer` wrote,
//! then the body through the shard's serving path. Must never: do I/O, read a clock, or hold
//! a body's bytes.

pub mod config;
pub mod index;
pub mod request;
pub mod response;

pub use config::HttpConfig;
