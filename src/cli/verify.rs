//! `squall verify`.

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {}

pub fn run(_args: VerifyArgs) -> Result<ExitCode, String> {
    Err("not implemented yet".into())
}
