# test_http_gzip inflates with zlib itself; gzip_clients.py runs it with
# --serve and fetches through real clients (Python's urllib + gzip module,
# curl --compressed).
if(TARGET test_http_gzip)
  find_package(ZLIB REQUIRED)
  target_link_libraries(test_http_gzip PRIVATE ZLIB::ZLIB)
  find_program(IOLOOP_CURL curl)
  if(IOLOOP_CURL)
    add_test(NAME gzip_clients COMMAND /usr/bin/python3 ${CMAKE_CURRENT_LIST_DIR}/gzip_clients.py
             $<TARGET_FILE:test_http_gzip> ${IOLOOP_CURL})
    set_tests_properties(gzip_clients PROPERTIES TIMEOUT 60)
  endif()
endif()
