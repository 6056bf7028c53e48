# `cmake --install` must give a usable package: a consumer project finds it
# with find_package(ioloop) and with pkg-config, builds and runs. (Skipped in
# sanitizer builds, whose libraries need the sanitizer runtime to link.)
if(NOT IOLOOP_SANITIZE)
  add_test(NAME install_consumer
    COMMAND ${CMAKE_COMMAND} -E env CMAKE=${CMAKE_COMMAND}
            bash ${CMAKE_CURRENT_SOURCE_DIR}/consumer/run.sh ${PROJECT_BINARY_DIR} ${CMAKE_CURRENT_BINARY_DIR}/consumer-work)
  set_tests_properties(install_consumer PROPERTIES TIMEOUT 300)
endif()
