pub use teachin_domain;
