# load_peers: tools/ioloop-load against helloworld (http and https), nginx,
# and hostile servers (reset, stall, 500, garbage, close-delimited, slow,
# refused): load_peers.py asserts the counts and error kinds. Once per backend.
if(TARGET ioloop-load AND TARGET helloworld)
  find_program(IOLOOP_PYTHON3 python3 HINTS /usr/bin)
  if(IOLOOP_PYTHON3)
    foreach(backend epoll poll)
      add_test(NAME load_peers.${backend}
        COMMAND ${IOLOOP_PYTHON3} ${CMAKE_CURRENT_LIST_DIR}/load_peers.py $<TARGET_FILE:ioloop-load> $<TARGET_FILE:helloworld>)
      set_tests_properties(load_peers.${backend} PROPERTIES
        ENVIRONMENT "IOLOOP_BACKEND=${backend}" TIMEOUT 120)
    endforeach()
  else()
    message(WARNING "python3 not found: the load_peers test is not registered")
  endif()
endif()
