//! The `jobclient` command line tool.
