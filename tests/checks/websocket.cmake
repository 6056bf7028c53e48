# websocket: our WebSocket server (tools/examples/ws_echo, ws_chat) and client
# (tools/ws-load --check) against Python's websockets (python3-websockets,
# run with /usr/bin/python3), once per backend like the suites.
if(TARGET ws_echo AND TARGET ws_chat AND TARGET ws-load)
  execute_process(COMMAND /usr/bin/python3 -c "import websockets" RESULT_VARIABLE IOLOOP_HAVE_PY_WEBSOCKETS
                  OUTPUT_QUIET ERROR_QUIET)
  if(IOLOOP_HAVE_PY_WEBSOCKETS EQUAL 0)
    foreach(backend epoll poll)
      add_test(NAME websocket_peers.${backend}
        COMMAND /usr/bin/python3 ${CMAKE_CURRENT_LIST_DIR}/websocket_peers.py $<TARGET_FILE_DIR:ws_echo>
                $<TARGET_FILE_DIR:ws-load>)
      set_tests_properties(websocket_peers.${backend} PROPERTIES
        ENVIRONMENT "IOLOOP_BACKEND=${backend}" TIMEOUT 300)
    endforeach()
  else()
    message(WARNING "python3-websockets not installed (tools/deps): the websocket_peers test is not registered")
  endif()
endif()
