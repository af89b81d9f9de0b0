//! Every read model the portals query, one module per projection. [`all`] is the catalogue the
//! accessor runs and `teachin projections` names.

mod game_configs;

pub use game_configs::GameConfigs;

use crate::projection::Projection;
use std::sync::Arc;

/// Every read-model projection, in no particular order (each has its own checkpoint).
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![Arc::new(GameConfigs)]
}
