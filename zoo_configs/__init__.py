# Benchmark suites of sb3_pgext (python -m sb3_pgext.suite run <name>); installed as sb3_pgext.zoo_configs
