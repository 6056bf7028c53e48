# metrics_peers: helloworld --metrics and ioloop-serve --metrics scraped with
# curl and parsed by prometheus_client's text parser
# (tests/checks/metrics_peers.py). Once per backend, like the suites.
# Registered only when python3 has prometheus_client (tools/deps installs
# python3-prometheus-client).
if(TARGET helloworld AND TARGET ioloop-serve)
  find_program(IOLOOP_CURL curl)
  execute_process(COMMAND /usr/bin/python3 -c "import prometheus_client.parser"
                  RESULT_VARIABLE IOLOOP_PROMETHEUS_CLIENT OUTPUT_QUIET ERROR_QUIET)
  if(IOLOOP_CURL AND IOLOOP_PROMETHEUS_CLIENT EQUAL 0)
    foreach(backend epoll poll)
      add_test(NAME metrics_peers.${backend}
        COMMAND /usr/bin/python3 ${CMAKE_CURRENT_LIST_DIR}/metrics_peers.py
                $<TARGET_FILE:helloworld> $<TARGET_FILE:ioloop-serve> ${IOLOOP_CURL})
      set_tests_properties(metrics_peers.${backend} PROPERTIES
        ENVIRONMENT "IOLOOP_BACKEND=${backend}" TIMEOUT 120)
    endforeach()
  else()
    message(WARNING "curl or python3-prometheus-client missing: the metrics_peers test is not registered")
  endif()
endif()
