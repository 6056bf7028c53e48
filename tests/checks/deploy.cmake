# tools/deploy end to end against real peers (each script asserts 0 failed
# requests and says what it saw; exit 77 = a peer is truly missing):
#  - deploy_restart_inherit / deploy_restart_reuseport: 5 restarts of
#    helloworld under load on one host (socket handed down; SO_REUSEPORT
#    with tcp_migrate_req in a private network namespace);
#  - deploy_haproxy: HAProxy (PROXY v2, /healthz checks) in front of 2
#    processes, each restarted 3 times in turn, the client's address in the logs;
#  - deploy_nginx: nginx as a keep-alive upstream to 2 processes, connections reused.
if(TARGET helloworld)
  find_program(IOLOOP_DEPLOY_PYTHON3 python3 HINTS /usr/bin NO_DEFAULT_PATH)
  if(NOT IOLOOP_DEPLOY_PYTHON3)
    find_program(IOLOOP_DEPLOY_PYTHON3 python3)
  endif()
  set(deploy_dir ${PROJECT_SOURCE_DIR}/tools/deploy)
  add_test(NAME deploy_restart_inherit
           COMMAND ${IOLOOP_DEPLOY_PYTHON3} ${deploy_dir}/restart-under-load $<TARGET_FILE:helloworld> --mode inherit)
  add_test(NAME deploy_restart_reuseport
           COMMAND ${IOLOOP_DEPLOY_PYTHON3} ${deploy_dir}/restart-under-load $<TARGET_FILE:helloworld> --mode reuseport)
  add_test(NAME deploy_haproxy COMMAND ${IOLOOP_DEPLOY_PYTHON3} ${deploy_dir}/haproxy-rolling-restart $<TARGET_FILE:helloworld>)
  add_test(NAME deploy_nginx COMMAND ${IOLOOP_DEPLOY_PYTHON3} ${deploy_dir}/nginx-keepalive-upstream $<TARGET_FILE:helloworld>)
  set_tests_properties(deploy_restart_inherit deploy_restart_reuseport deploy_haproxy deploy_nginx
                       PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77)
  # Each starts several servers with a few loops: not two at once on 2 cores.
  set_tests_properties(deploy_restart_inherit deploy_restart_reuseport deploy_haproxy deploy_nginx
                       PROPERTIES RESOURCE_LOCK ioloop_deploy)
endif()
