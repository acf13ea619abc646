//! `squall make`.

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct MakeArgs {}

pub fn run(_args: MakeArgs) -> Result<ExitCode, String> {
    Err("not implemented yet".into())
}
