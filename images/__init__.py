"""Container images of the pipeline (Dockerfiles, the build script) and
`lock.json`, the one place image references come from. Installed as
`posttrain.images` so that the lock ships with the package."""
