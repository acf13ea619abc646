//! `squall info`.

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct InfoArgs {}

pub fn run(_args: InfoArgs) -> Result<ExitCode, String> {
    Err("not implemented yet".into())
}
