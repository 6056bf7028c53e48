# tools/ioloop-serve end to end with curl (tests/checks/ioloop_serve.py).
if(TARGET ioloop-serve)
  find_program(IOLOOP_CURL curl)
  if(IOLOOP_CURL)
    add_test(NAME ioloop_serve COMMAND /usr/bin/python3 ${CMAKE_CURRENT_LIST_DIR}/ioloop_serve.py
             $<TARGET_FILE:ioloop-serve> ${IOLOOP_CURL})
    set_tests_properties(ioloop_serve PROPERTIES TIMEOUT 120)
  endif()
endif()
