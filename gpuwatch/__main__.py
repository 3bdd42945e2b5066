from gpuwatch.cli import console_main

console_main()
