//! One module per subcommand.

pub mod accuracy;
pub mod calibrate;
pub mod comm;
pub mod data;
pub mod dry_run;
pub mod embed;
pub mod eval;
pub mod export;
pub mod model;
pub mod plan;
pub mod sweep;
pub mod synthetic_images;
pub mod train;
pub mod validate;
pub mod weights_source;
