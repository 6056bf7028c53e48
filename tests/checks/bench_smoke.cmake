# bench_smoke: `ioloop-bench all --quick` runs every benchmark at small sizes
# and exits 0. It checks that the tool works, never how fast anything is.
if(TARGET ioloop-bench)
  add_test(NAME bench_smoke COMMAND ioloop-bench all --quick)
  set_tests_properties(bench_smoke PROPERTIES TIMEOUT 120)
endif()
