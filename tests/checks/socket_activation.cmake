# tools/helloworld under systemd-socket-activate, with NOTIFY_SOCKET (tests/checks/socket_activation.py).
if(TARGET helloworld)
  find_program(IOLOOP_CURL curl)
  if(IOLOOP_CURL)
    add_test(NAME socket_activation COMMAND /usr/bin/python3 ${CMAKE_CURRENT_LIST_DIR}/socket_activation.py
             $<TARGET_FILE:helloworld> ${IOLOOP_CURL})
    # 77: systemd-socket-activate cannot run in this container (said on stdout)
    set_tests_properties(socket_activation PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77)
  endif()
endif()
