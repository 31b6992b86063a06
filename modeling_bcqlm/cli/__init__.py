"""The `bcqlm` console command."""
