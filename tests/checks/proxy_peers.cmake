# The PROXY protocol against curl --haproxy-protocol and HAProxy (tests/checks/proxy_peers.py).
if(TARGET helloworld AND TARGET ioloop-serve)
  find_program(IOLOOP_CURL curl)
  find_program(IOLOOP_HAPROXY haproxy PATHS /usr/sbin)
  if(IOLOOP_CURL)
    if(NOT IOLOOP_HAPROXY)
      set(IOLOOP_HAPROXY "")
    endif()
    add_test(NAME proxy_peers COMMAND /usr/bin/python3 ${CMAKE_CURRENT_LIST_DIR}/proxy_peers.py
             $<TARGET_FILE:helloworld> $<TARGET_FILE:ioloop-serve> ${IOLOOP_CURL} "${IOLOOP_HAPROXY}")
    set_tests_properties(proxy_peers PROPERTIES TIMEOUT 120)
  endif()
endif()
