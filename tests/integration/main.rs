//! Integration tests: they drive the real `curate` binary as a child process.

mod cli;
mod common;
mod fetch;
mod ingest;
mod resume;
mod slurm;
