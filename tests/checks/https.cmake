# https_peers: tools/helloworld serving https:// against real TLS peers (curl,
# Python ssl/http.client, openssl s_client) and plain HTTP sent to its port;
# https_peers.py asserts exact outputs. Once per backend, like the suites.
# Registered only when helloworld is built with TLS and the peers exist.
if(TARGET helloworld AND IOLOOP_TLS AND TARGET ioloop::tls)
  find_program(IOLOOP_PYTHON3 python3 HINTS /usr/bin)
  find_program(IOLOOP_CURL curl)
  find_program(IOLOOP_OPENSSL openssl)
  if(IOLOOP_PYTHON3 AND IOLOOP_CURL AND IOLOOP_OPENSSL)
    foreach(backend epoll poll)
      add_test(NAME https_peers.${backend}
        COMMAND ${IOLOOP_PYTHON3} ${CMAKE_CURRENT_LIST_DIR}/https_peers.py $<TARGET_FILE:helloworld> "${IOLOOP_SANITIZE}")
      set_tests_properties(https_peers.${backend} PROPERTIES
        ENVIRONMENT "IOLOOP_BACKEND=${backend}" TIMEOUT 300)
    endforeach()
  else()
    message(WARNING "python3, curl or openssl not found: the https_peers test is not registered")
  endif()
endif()
