//! Security: TLS for every listener ([`tls`]).
pub mod tls;
