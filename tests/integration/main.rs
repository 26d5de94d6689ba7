//! Integration tests: they drive the real `curate` binary as a child process.

mod cli;
mod common;
mod embed;
mod fetch;
mod ingest;
mod resume;
mod slurm;
