//! Authentication: who the caller is. Passwords (argon2id), short-lived access tokens (JWT),
//! rotating refresh sessions in Redis, and the rate limits that slow down guessing.
//! *What* a caller may do is decided elsewhere, in `access`.

pub mod password;
pub mod rate_limit;
pub mod revocation;
pub mod sessions;
pub mod tokens;
