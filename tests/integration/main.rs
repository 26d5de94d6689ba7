//! Integration tests: they drive the real `curate` binary as a child process.

mod caption;
mod cli;
mod common;
mod dedup;
mod embed;
mod fetch;
mod ingest;
mod latents;
mod report;
mod resume;
mod score;
mod slurm;
mod text;
mod train;
