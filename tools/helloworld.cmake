# tools/helloworld: the seed's hello world on libioloop-http (included by
# tools/CMakeLists.txt).
if(NOT TARGET helloworld)
  add_executable(helloworld ${PROJECT_SOURCE_DIR}/tools/helloworld.c)
  target_link_libraries(helloworld PRIVATE ioloop_http Threads::Threads)
  install(TARGETS helloworld RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
