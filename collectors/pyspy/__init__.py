"""Out-of-process sampling for `gpuwatch attach`: py-spy in non-blocking mode, the stacks it returns turned
into spans, and step detection from the training thread's loop. Imports only `gpuwatch.records`,
`gpuwatch.errors` and other collectors."""
