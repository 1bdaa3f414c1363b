//! One module per subcommand.

pub mod model;
pub mod calibrate;
pub mod dry_run;
pub mod plan;
pub mod sweep;
pub mod synthetic_images;
pub mod train;
pub mod validate;
