# static_clients: curl (-r, -z, --compressed) and Python's urllib against
# tools/http-bench/static_server (ioloop_http_static_route); once per backend.
if(TARGET static_server)
  find_program(IOLOOP_PYTHON3 python3 HINTS /usr/bin)
  find_program(IOLOOP_CURL curl)
  if(IOLOOP_PYTHON3 AND IOLOOP_CURL)
    foreach(backend epoll poll)
      add_test(NAME static_clients.${backend}
        COMMAND ${IOLOOP_PYTHON3} ${CMAKE_CURRENT_LIST_DIR}/static_clients.py ${CMAKE_BINARY_DIR})
      set_tests_properties(static_clients.${backend} PROPERTIES
        ENVIRONMENT "IOLOOP_BACKEND=${backend}" TIMEOUT 120)
    endforeach()
  else()
    message(WARNING "python3 or curl not found: the static_clients test is not registered")
  endif()
endif()
