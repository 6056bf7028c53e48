# examples: tools/examples (echo_server, kv_server, kv_client) built and
# driven as a user would by examples.py (Python 3, standard library only),
# which asserts exact outputs; once per backend, like the suites. Memory
# bounds are skipped in sanitizer builds (shadow memory inflates RSS).
if(TARGET kv_server AND TARGET kv_client AND TARGET echo_server)
  find_program(IOLOOP_PYTHON3 python3 HINTS /usr/bin)
  if(IOLOOP_PYTHON3)
    foreach(backend epoll poll)
      add_test(NAME examples.${backend}
        COMMAND ${IOLOOP_PYTHON3} ${CMAKE_CURRENT_LIST_DIR}/examples.py $<TARGET_FILE_DIR:kv_server>
                "${IOLOOP_SANITIZE}")
      set_tests_properties(examples.${backend} PROPERTIES
        ENVIRONMENT "IOLOOP_BACKEND=${backend}" TIMEOUT 300)
    endforeach()
  else()
    message(WARNING "python3 not found: the examples test is not registered")
  endif()
endif()
