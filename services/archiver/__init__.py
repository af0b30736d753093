"""The archiver worker: ages stories out, keeps "Also read" lists fresh."""
