-- wrk script: each write sends 16 pipelined GET / requests (wrk counts every
-- response, so req/s stays comparable with the keep-alive runs).
init = function(args)
   local depth = 16
   local r = {}
   for i = 1, depth do
      r[i] = wrk.format(nil, "/")
   end
   req = table.concat(r)
end

request = function()
   return req
end
