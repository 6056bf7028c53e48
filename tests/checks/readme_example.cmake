# The README's C examples must compile and run: each ```c block after a
# "<!-- NAME -->" marker in README.md is extracted at configure time, built
# against libioloop, and run as a test whose output must match `expect`.
set(readme ${PROJECT_SOURCE_DIR}/README.md)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${readme})
file(READ ${readme} readme_text)

function(ioloop_readme_example marker target expect)
  string(FIND "${readme_text}" "<!-- ${marker} -->" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "README.md has no <!-- ${marker} --> marker")
  endif()
  string(SUBSTRING "${readme_text}" ${at} -1 rest)
  string(REGEX MATCH "```c\n(.*)" _ "${rest}")
  set(after_fence "${CMAKE_MATCH_1}")
  string(FIND "${after_fence}" "```" fence_end)
  string(SUBSTRING "${after_fence}" 0 ${fence_end} code)
  file(WRITE ${CMAKE_CURRENT_BINARY_DIR}/${target}.c "${code}")
  add_executable(${target} ${CMAKE_CURRENT_BINARY_DIR}/${target}.c)
  target_link_libraries(${target} PRIVATE ioloop::ioloop Threads::Threads)
  add_test(NAME ${target} COMMAND ${target})
  set_tests_properties(${target} PROPERTIES TIMEOUT 30 PASS_REGULAR_EXPRESSION "${expect}")
endfunction()

# The loop: a post from a worker thread. The stream: a listener with on_stream
# on a runtime, echoing a line back to a blocking client.
ioloop_readme_example(embedding-example readme_example "hello from loop")
ioloop_readme_example(stream-example readme_stream_example "echoed: hello from loop")
